"""Test and rehearsal helpers (not imported by ``import queryvision_mm``): ``rehearsal`` runs shipped configs at
their real architecture on tiny data written in each config's own format (``tools/misc/rehearse.py``)."""
