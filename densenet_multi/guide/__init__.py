"""The teaching guide's generators: everything the docs site shows that comes from running code.

``python -m densenet_multi.guide.build --out docs/generated`` (the ``docs`` tox env)
runs the four backends in their own environments, as the parity harness does, and
writes what ``mkdocs build --strict`` then includes: the conventions tables read from
the built models (:mod:`.conventions`), the porting pitfalls measured through the
harness (:mod:`.pitfalls`), the notebooks executed in their backends' environments
(:mod:`.notebooks`) and the figures (:mod:`.figures`). Nothing here imports a
framework in the calling process.
"""
