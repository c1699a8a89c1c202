# Messages envoyés aux personnes : codes à usage unique par SMS, appel vocal et e-mail.
code-text = { $application } : votre code de connexion est { $code }. Il expire dans { $minutes ->
        [one] { $minutes } minute
       *[other] { $minutes } minutes
    }. Ne le communiquez jamais.
code-email-subject = { $application } : code de connexion
