# Textes que le serveur écrit dans les demandes signées pour les appareils (titre et libellés
# affichés par l'application). Les textes du client ne sont jamais traduits, seulement ceux-ci.
sign-in-prompt = Se connecter à { $application } ?
qr-sign-in-prompt = Se connecter à { $application } dans votre navigateur ?
pair-this-device-again = Associer à nouveau cet appareil (remplace son association actuelle)
pair-device-again = Associer à nouveau { $device } (remplace son association actuelle)
add-device = Ajouter { $device } (nouveau) comme { $count ->
        [2] deuxième appareil
        [3] troisième appareil
        [4] quatrième appareil
        [5] cinquième appareil
        [6] sixième appareil
        [7] septième appareil
        [8] huitième appareil
        [9] neuvième appareil
        [10] dixième appareil
       *[other] appareil numéro { $count }
    }
field-device = Appareil
field-model = Modèle
field-system = Système
field-devices-paired = Appareils associés actuellement
