"""Layer 4: the paper's figures.

The one figure → spectra map (:mod:`~hspec.figures.specs`), the numbers each caption
quotes (:mod:`~hspec.figures.caption_numbers`), the captions themselves
(:mod:`~hspec.figures.captions`) and the drawing, in one look
(:mod:`~hspec.figures.drawing`). The notebooks under ``notebooks/`` call these.
"""
