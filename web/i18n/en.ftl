# The browser runtime's own texts (web/switchboard.js, CONFIG.TEXT_*).
# A project overrides any of them in its i18n/<lang>.ftl.

sb-error = Error
sb-invalid = Invalid value
sb-ok = OK
sb-close = Close
sb-cancel = Cancel
sb-connecting = Connecting…
sb-connected = Connected
sb-reconnecting = Reconnecting…
sb-rejected = The server refused the command: { $reason }
sb-page-failed = Could not open the page { $page }: { $reason }
sb-download-failed = Download failed: { $reason }
sb-copy-failed = Could not copy to the clipboard.
sb-link-copied = Link copied to the clipboard.
sb-no-codescan = This device can't scan codes.
sb-no-camera = The camera is not available.
sb-scan-title = Scan a code
sb-no-speech = This device can't recognise speech.
sb-speech-failed = No speech was recognised.
sb-listening = Listening…
sb-no-app = This device can't run app:{ $command }.
sb-session-ended = Your session has ended. Reload the page to start a new one.
sb-reload = Reload
sb-pending = { $count } waiting to be sent
sb-challenge-title = Confirm your identity
sb-challenge-user = User
sb-challenge-password = Password
sb-challenge-submit = Confirm
sb-dev-error-title = The project has errors (still serving the last good version)
sb-dev-notice-title = Dev mode: something the handler did had no effect
