"""Size of the catalog and trace that the replay tests share (fixtures in conftest.py)."""

N, R = 120, 1500  # contexts, requests
