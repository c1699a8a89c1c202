# Messages the server sends to people: one-time passcodes by SMS, voice call and email.
code-text = { $application }: your sign-in code is { $code }. It expires in { $minutes ->
        [one] { $minutes } minute
       *[other] { $minutes } minutes
    }. Never share it.
code-email-subject = { $application } sign-in code
