"""The procedure of the paper (Fig. 1) and every plugin contract; imports torch and numpy, nothing above it.

- procedure.py: `EditEngine.edit`, the five steps of one edit, and the state its stages share.
- ddim.py (Eqs. 1-2), masks.py (Eq. 7), ito.py (Eq. 6), denoiser.py (eps with conditioners and CFG).
- stages.py, loss.py, conditioning.py, backbone.py: the contracts of the stage, loss, conditioner and
  backbone plugins.
- request.py (what goes in and comes out), settings.py (the grouped settings), errors.py, mask_cache.py.
"""
