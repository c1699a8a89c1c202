// A real tessera-server process on a loopback port, the customer API over HTTP (java.net.http),
// and a local push webhook standing in for FCM (the JDK's HTTP server): what the JVM tests drive
// the Kotlin wrapper against. The server binary comes from $TESSERA_SERVER_BIN.
package dev.tessera.jvmtests

import com.sun.net.httpserver.HttpServer
import java.io.File
import java.net.InetSocketAddress
import java.net.ServerSocket
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.time.Duration
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

/** Just enough JSON for the tests: parse to Map/List/String/Double/Boolean/null, and write. */
object Json {
    fun parse(text: String): Any? = Parser(text).run { val v = value(); ws(); v }

    fun write(value: Any?): String = when (value) {
        null -> "null"
        is String -> buildString {
            append('"')
            for (c in value) when {
                c == '"' -> append("\\\"")
                c == '\\' -> append("\\\\")
                c < ' ' -> append(String.format("\\u%04x", c.code))
                else -> append(c)
            }
            append('"')
        }
        is Boolean, is Number -> value.toString()
        is Map<*, *> -> value.entries.joinToString(",", "{", "}") { write(it.key as String) + ":" + write(it.value) }
        is List<*> -> value.joinToString(",", "[", "]") { write(it) }
        else -> error("cannot write ${value::class}")
    }

    private class Parser(val s: String) {
        var i = 0
        fun ws() { while (i < s.length && s[i].isWhitespace()) i++ }
        fun value(): Any? {
            ws()
            return when (s[i]) {
                '{' -> {
                    i++; val m = LinkedHashMap<String, Any?>(); ws()
                    if (s[i] == '}') { i++; return m }
                    while (true) {
                        ws(); val k = string(); ws(); check(s[i++] == ':'); m[k] = value(); ws()
                        if (s[i++] == '}') return m
                    }
                    @Suppress("UNREACHABLE_CODE") m
                }
                '[' -> {
                    i++; val l = ArrayList<Any?>(); ws()
                    if (s[i] == ']') { i++; return l }
                    while (true) { l.add(value()); ws(); if (s[i++] == ']') return l }
                    @Suppress("UNREACHABLE_CODE") l
                }
                '"' -> string()
                't' -> { i += 4; true }
                'f' -> { i += 5; false }
                'n' -> { i += 4; null }
                else -> {
                    val start = i
                    while (i < s.length && (s[i].isDigit() || s[i] in "+-.eE")) i++
                    s.substring(start, i).toDouble()
                }
            }
        }
        fun string(): String {
            check(s[i++] == '"')
            val out = StringBuilder()
            while (true) {
                val c = s[i++]
                when (c) {
                    '"' -> return out.toString()
                    '\\' -> when (val e = s[i++]) {
                        'n' -> out.append('\n'); 't' -> out.append('\t'); 'r' -> out.append('\r')
                        'b' -> out.append('\b'); 'f' -> out.append('\u000c')
                        'u' -> { out.append(s.substring(i, i + 4).toInt(16).toChar()); i += 4 }
                        else -> out.append(e)
                    }
                    else -> out.append(c)
                }
            }
        }
    }
}

@Suppress("UNCHECKED_CAST")
fun Any?.obj(): Map<String, Any?> = this as Map<String, Any?>

/** The application's push webhook: every push the server sends, in order. */
class PushReceiver : AutoCloseable {
    val pushes = LinkedBlockingQueue<Map<String, Any?>>()
    private val http = HttpServer.create(InetSocketAddress("127.0.0.1", 0), 0).apply {
        createContext("/push") { exchange ->
            pushes.put(Json.parse(exchange.requestBody.readBytes().decodeToString()).obj())
            exchange.sendResponseHeaders(200, -1)
            exchange.close()
        }
        start()
    }
    val url = "http://127.0.0.1:${http.address.port}/push"

    /** The next push for [enrollmentId]. */
    fun next(enrollmentId: String): Map<String, Any?> {
        while (true) {
            val push = pushes.poll(10, TimeUnit.SECONDS) ?: error("no push within 10 s")
            if (push["enrollment_id"] == enrollmentId) return push
        }
    }

    override fun close() = http.stop(0)
}

/**
 * A TLS-terminating proxy in front of the server's plain-HTTP listener: the device's calls go
 * over HTTPS with a certificate from the test CA ($TESSERA_TEST_TLS_DIR, made by
 * bindings/tests/run.sh), so the SDK's TLS path (reqwest, rustls, the platform verifier) runs as
 * on a phone. [handshakes] counts completed TLS handshakes.
 */
class TlsProxy(private val targetPort: Int, p12: File, password: String = "tessera") : AutoCloseable {
    private val socket: javax.net.ssl.SSLServerSocket
    val port: Int
    val handshakes = java.util.concurrent.atomic.AtomicInteger()
    @Volatile private var closed = false

    init {
        val keys = java.security.KeyStore.getInstance("PKCS12")
        p12.inputStream().use { keys.load(it, password.toCharArray()) }
        val managers = javax.net.ssl.KeyManagerFactory.getInstance(javax.net.ssl.KeyManagerFactory.getDefaultAlgorithm())
        managers.init(keys, password.toCharArray())
        val context = javax.net.ssl.SSLContext.getInstance("TLS")
        context.init(managers.keyManagers, null, null)
        socket = context.serverSocketFactory.createServerSocket(0, 50, java.net.InetAddress.getLoopbackAddress())
            as javax.net.ssl.SSLServerSocket
        port = socket.localPort
        Thread { acceptLoop() }.apply { isDaemon = true }.start()
    }

    private fun acceptLoop() {
        while (!closed) {
            val client = try { socket.accept() as javax.net.ssl.SSLSocket } catch (e: java.io.IOException) { return }
            Thread {
                try {
                    client.startHandshake()
                    handshakes.incrementAndGet()
                    java.net.Socket(java.net.InetAddress.getLoopbackAddress(), targetPort).use { upstream ->
                        val up = Thread { pump(client.inputStream, upstream.outputStream, client, upstream) }
                        up.isDaemon = true
                        up.start()
                        pump(upstream.inputStream, client.outputStream, client, upstream)
                        up.join()
                    }
                } catch (e: java.io.IOException) {
                    // A refused handshake (an untrusting client) or a closed connection.
                } finally {
                    client.close()
                }
            }.apply { isDaemon = true }.start()
        }
    }

    private fun pump(from: java.io.InputStream, to: java.io.OutputStream, a: java.net.Socket, b: java.net.Socket) {
        try {
            from.copyTo(to)
        } catch (e: java.io.IOException) {
            // The other side closed.
        } finally {
            a.close()
            b.close()
        }
    }

    override fun close() {
        closed = true
        socket.close()
    }
}

/**
 * A new temporary folder for a device's keys and state, removed with everything in it when the
 * JVM exits (`deleteOnExit` would leave it: it removes only an empty folder).
 */
fun deviceDir(): File {
    val dir = Files.createTempDirectory("tessera-device-").toFile()
    Runtime.getRuntime().addShutdownHook(Thread { dir.deleteRecursively() })
    return dir
}

/** The test CA folder ($TESSERA_TEST_TLS_DIR), or null to run over plain HTTP. */
val testTlsDir: File? = System.getenv("TESSERA_TEST_TLS_DIR")?.let(::File)

class ApiException(val status: Int, val code: String, message: String) : Exception("$status $code: $message")

/** `tessera-server serve` on SQLite in a temporary folder, with one application. */
class Server(webhook: String?) : AutoCloseable {
    private val binary = System.getenv("TESSERA_SERVER_BIN") ?: "tessera-server"
    private val dir: File = Files.createTempDirectory("tessera-jvm-").toFile()
    private val database = "sqlite://${dir.absolutePath}/tessera.db"
    val applicationId: String
    private val apiKey: String
    val url: String
    /** The URL devices use: the TLS proxy's (https://localhost:…) when the test CA is there. */
    val publicUrl: String
    /** The TLS proxy in front of the server, if any. */
    val tls: TlsProxy?
    private val process: Process
    private val http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build()

    init {
        val app = Json.parse(admin("create-app", "Example Bank")).obj()
        applicationId = app["application_id"] as String
        apiKey = app["api_key"] as String
        if (webhook != null) admin("set-push-webhook", applicationId, webhook)
        val port = ServerSocket(0, 1, java.net.InetAddress.getLoopbackAddress()).use { it.localPort }
        url = "http://127.0.0.1:$port"
        tls = testTlsDir?.let { TlsProxy(port, File(it, "server.p12")) }
        publicUrl = tls?.let { "https://localhost:${it.port}" } ?: url
        process = ProcessBuilder(
            binary, "serve", "--listen", "127.0.0.1:$port", "--database", database, "--ciba-poll-interval", "1",
            "--public-url", publicUrl,
        )
            .redirectErrorStream(true)
            .redirectOutput(File(dir, "server.log"))
            .start()
        val deadline = System.nanoTime() + 30_000_000_000L
        while (true) {
            val up = try {
                http.send(HttpRequest.newBuilder(URI("$url/healthz")).build(), HttpResponse.BodyHandlers.discarding())
                    .statusCode() == 200
            } catch (e: java.io.IOException) {
                false
            }
            if (up) break
            check(process.isAlive && System.nanoTime() < deadline) { "tessera-server did not start" }
            Thread.sleep(100)
        }
    }

    private fun admin(vararg args: String): String {
        val p = ProcessBuilder(listOf(binary, "admin", "--database", database) + args).start()
        val out = p.inputStream.readBytes().decodeToString()
        check(p.waitFor() == 0) { "admin ${args.first()} failed: ${p.errorStream.readBytes().decodeToString()}" }
        return out
    }

    /** A customer API call, as the customer's backend makes it. */
    fun call(method: String, path: String, body: Map<String, Any?>? = null): Map<String, Any?> {
        val publisher = if (body == null) HttpRequest.BodyPublishers.noBody()
        else HttpRequest.BodyPublishers.ofString(Json.write(body))
        val request = HttpRequest.newBuilder(URI(url + path))
            .method(method, publisher)
            .header("authorization", "Bearer $apiKey")
            .header("content-type", "application/json")
            .timeout(Duration.ofSeconds(40))
            .build()
        val response = http.send(request, HttpResponse.BodyHandlers.ofString())
        val parsed = if (response.body().isEmpty()) emptyMap() else Json.parse(response.body()).obj()
        if (response.statusCode() >= 300) {
            val error = parsed["error"].obj()
            throw ApiException(response.statusCode(), error["code"] as String, error["message"] as String)
        }
        return parsed
    }

    fun createUser(userId: String, displayName: String) =
        call("POST", "/v1/users", mapOf("user_id" to userId, "display_name" to displayName))

    fun pairingUri(userId: String) = call("POST", "/v1/users/$userId/pairings", emptyMap())["pairing_uri"] as String

    fun authenticate(userId: String, body: Map<String, Any?>) = call("POST", "/v1/users/$userId/authentications", body)

    fun authentication(id: String, wait: Int = 0) = call("GET", "/v1/authentications/$id?wait=$wait")

    fun createQrSession(body: Map<String, Any?> = emptyMap()) = call("POST", "/v1/qr-sessions", body)

    fun qrSession(id: String) = call("GET", "/v1/qr-sessions/$id?wait=0")

    /** Registers a poll-mode CIBA relying party (client_secret_basic): its id and secret. */
    fun registerCibaClient(name: String): Pair<String, String> {
        val registered = call(
            "POST", "/v1/ciba/clients",
            mapOf(
                "client_name" to name,
                "backchannel_token_delivery_mode" to "poll",
                "token_endpoint_auth_method" to "client_secret_basic",
            ),
        )
        return registered["client_id"] as String to registered["client_secret"] as String
    }

    /**
     * A relying party's form POST to an OpenID endpoint with HTTP Basic client authentication:
     * the status and the JSON body.
     */
    fun oauthPost(path: String, client: Pair<String, String>, form: Map<String, String>): Pair<Int, Map<String, Any?>> {
        val enc = { s: String -> java.net.URLEncoder.encode(s, Charsets.UTF_8) }
        val basic = java.util.Base64.getEncoder()
            .encodeToString("${enc(client.first)}:${enc(client.second)}".toByteArray())
        val request = HttpRequest.newBuilder(URI(url + path))
            .POST(HttpRequest.BodyPublishers.ofString(form.entries.joinToString("&") { (k, v) -> "${enc(k)}=${enc(v)}" }))
            .header("authorization", "Basic $basic")
            .header("content-type", "application/x-www-form-urlencoded")
            .timeout(Duration.ofSeconds(20))
            .build()
        val response = http.send(request, HttpResponse.BodyHandlers.ofString())
        return response.statusCode() to Json.parse(response.body()).obj()
    }

    override fun close() {
        tls?.close()
        process.destroy()
        process.waitFor(10, TimeUnit.SECONDS)
        dir.deleteRecursively()
    }
}
