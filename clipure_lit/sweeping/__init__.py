"""Run W&B sweep files locally and offline: plan the configurations with W&B's own sweep engine (the ``sweeps``
package), run each as a normal ``eval.py`` run, in parallel, resumably."""
