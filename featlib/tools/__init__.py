"""Command-line tools around the study, not the science: ``chain`` (run the notebooks with papermill),
``lm`` (train the tiny profile's language models), ``bench`` (fast paths vs reference runs) and
``colab`` (the notebooks' Colab header and its one setup call). Run them as ``python -m featlib.tools.NAME``.
"""
