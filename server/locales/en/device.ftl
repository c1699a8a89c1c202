# Texts the server writes into the requests it signs for devices (the headline and field labels
# shown by the app). Customer texts are never translated; only these defaults.
sign-in-prompt = Sign in to { $application }?
qr-sign-in-prompt = Sign in to { $application } in your browser?
pair-this-device-again = Pair this device again (replaces its current pairing)
pair-device-again = Pair { $device } again (replaces its current pairing)
add-device = Add { $device } (new) as { $count ->
        [2] a second device
        [3] a third device
        [4] a fourth device
        [5] a fifth device
        [6] a sixth device
        [7] a seventh device
        [8] an eighth device
        [9] a ninth device
        [10] a tenth device
       *[other] device number { $count }
    }
field-device = Device
field-model = Model
field-system = System
field-devices-paired = Devices paired now
