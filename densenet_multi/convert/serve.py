"""``python -m densenet_multi.convert.serve --framework F``: a framework's conversion worker
(:func:`densenet_multi.convert.worker.main`), as its own entry module so that ``runpy`` does
not re-execute a module the package has already imported."""

from .worker import main

raise SystemExit(main())
