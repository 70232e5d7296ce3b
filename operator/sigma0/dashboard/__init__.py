"""The dashboard: one read-only page that shows whether the model is getting better.

    board.py     pure: cycles (their status, as sigma0.kube.status renders it), releases, GPU-hours → a Board
    plot.py      the pass@1 curve of a release (pygal, server-side SVG)
    evidence.py  a cycle's per-problem results of both models, checked against the digests its record holds
    sources.py   where the figures come from: a local workdir, or the API server (the operator's clients)
    server.py    the HTTP server (stdlib), templates/ and static/ (Jinja2; every asset ships in the package)

`sigma0 dashboard --workdir DIR` serves a local workdir; `sigma0 operator --dashboard-port N` serves the cluster.
"""
