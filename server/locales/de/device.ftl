# Texte, die der Server in die signierten Anfragen an Geräte schreibt (Überschrift und
# Feldbezeichnungen in der App). Texte des Kunden werden nie übersetzt, nur diese Vorgaben.
sign-in-prompt = Bei { $application } anmelden?
qr-sign-in-prompt = Im Browser bei { $application } anmelden?
pair-this-device-again = Dieses Gerät erneut koppeln (ersetzt seine bisherige Kopplung)
pair-device-again = { $device } erneut koppeln (ersetzt seine bisherige Kopplung)
add-device = { $device } (neu) hinzufügen als { $count ->
        [2] zweites Gerät
        [3] drittes Gerät
        [4] viertes Gerät
        [5] fünftes Gerät
        [6] sechstes Gerät
        [7] siebtes Gerät
        [8] achtes Gerät
        [9] neuntes Gerät
        [10] zehntes Gerät
       *[other] Gerät Nummer { $count }
    }
field-device = Gerät
field-model = Modell
field-system = System
field-devices-paired = Derzeit gekoppelte Geräte
