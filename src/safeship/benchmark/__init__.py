"""The analysis benchmark's instruments: releases drawn from a declared distribution, the
policy-free rule that labels each bad one must-catch or should-catch, and the statistics its
tables report. `bench/analysis.py` runs them; nothing in the deployment path imports this package."""
