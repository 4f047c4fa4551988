"""The operators' dashboard: ``index.html``, ``app.js`` and ``style.css`` in this folder,
served by :mod:`gate.ui_api` at ``/ui/``. Our own code, no third-party files and no build
step, so what the gate serves is what is reviewed here."""
