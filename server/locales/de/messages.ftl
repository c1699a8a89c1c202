# Nachrichten an Personen: Einmalcodes per SMS, Anruf und E-Mail.
code-text = { $application }: Ihr Anmeldecode ist { $code }. Er läuft in { $minutes ->
        [one] { $minutes } Minute
       *[other] { $minutes } Minuten
    } ab. Geben Sie ihn niemals weiter.
code-email-subject = { $application }: Anmeldecode
