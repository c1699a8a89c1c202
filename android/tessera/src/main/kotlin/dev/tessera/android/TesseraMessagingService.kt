package dev.tessera.android

import android.util.Log
import com.google.firebase.messaging.FirebaseMessagingService
import com.google.firebase.messaging.RemoteMessage
import dev.tessera.ffi.TesseraException
import kotlinx.coroutines.runBlocking

/**
 * FCM glue: subclass it, declare the subclass in the app's manifest (with the
 * `com.google.firebase.MESSAGING_EVENT` intent filter), and show [onRequest]'s request as a
 * notification that opens the approval screen. Silent verifications are answered here, without
 * the user. Push is a hint: a missed push is found later by [Tessera.pendingRequests].
 */
abstract class TesseraMessagingService : FirebaseMessagingService() {
    /** The app's SDK instance (kept in the `Application`). */
    abstract val tessera: Tessera

    /** A request to show: post a notification. Called on the service's worker thread. */
    abstract fun onRequest(request: TesseraRequest)

    /** A silent verification was answered. */
    open fun onSilentVerification(requestId: String) {}

    override fun onMessageReceived(message: RemoteMessage) {
        val data = message.data
        if ("request" !in data && "request_id" !in data) return // not Tessera's
        // onMessageReceived runs on a worker thread and has about 10 seconds: answer within it.
        try {
            when (val result = runBlocking { tessera.handlePush(data) }) {
                is PushResult.Show -> onRequest(result.request)
                is PushResult.AnsweredSilently -> onSilentVerification(result.requestId)
                PushResult.NothingPending -> {}
            }
        } catch (e: TesseraException) {
            Log.w(TAG, "push not handled: ${e.errorCode}")
        }
    }

    override fun onNewToken(token: String) {
        try {
            runBlocking { tessera.updateFcmToken(token) }
        } catch (e: TesseraException) {
            // Retried at the next start: the app calls updateFcmToken with the current token.
            Log.w(TAG, "push token not updated: ${e.errorCode}")
        }
    }

    private companion object {
        const val TAG = "Tessera"
    }
}
