# I testi del runtime del browser (web/switchboard.js, CONFIG.TEXT_*).
# Un progetto può sostituirli nel suo i18n/<lingua>.ftl.

sb-error = Errore
sb-invalid = Valore non valido
sb-ok = OK
sb-close = Chiudi
sb-cancel = Annulla
sb-connecting = Connessione…
sb-connected = Connesso
sb-reconnecting = Riconnessione…
sb-rejected = Il server ha rifiutato il comando: { $reason }
sb-page-failed = Impossibile aprire la pagina { $page }: { $reason }
sb-download-failed = Download non riuscito: { $reason }
sb-copy-failed = Impossibile copiare negli appunti.
sb-link-copied = Link copiato negli appunti.
sb-no-codescan = Questo dispositivo non può leggere codici.
sb-no-camera = La fotocamera non è disponibile.
sb-scan-title = Inquadra un codice
sb-no-speech = Questo dispositivo non riconosce la voce.
sb-speech-failed = Nessuna parola riconosciuta.
sb-listening = In ascolto…
sb-no-app = Questo dispositivo non può eseguire app:{ $command }.
sb-session-ended = La sessione è terminata. Ricarica la pagina per iniziarne una nuova.
sb-reload = Ricarica
sb-pending = { $count } in attesa di invio
sb-challenge-title = Conferma la tua identità
sb-challenge-user = Utente
sb-challenge-password = Password
sb-challenge-submit = Conferma
sb-dev-error-title = Il progetto ha errori (resta in servizio l'ultima versione valida)
sb-dev-notice-title = Modalità sviluppo: qualcosa che il gestore ha fatto non ha avuto effetto
