"""Storage backends behind one small contract (``base.py``) and one error tree (``errors.py``)."""
