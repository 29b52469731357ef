"""``densenet-multi bench``: throughput and memory of each backend against its framework's
official DenseNet, measured side by side.

:mod:`.probe` measures one configuration in its own process (``python -m
densenet_multi.bench.probe``); :mod:`.harness` plans the configurations and runs
each in a fresh process of its backend's environment; :mod:`.report` computes the
ratios and writes ``results.json``, ``ratios.md`` and the figure; :mod:`.cli` is the
command. Only the probe imports a framework.
"""
