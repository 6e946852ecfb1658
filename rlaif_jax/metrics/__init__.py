"""Pure NumPy metrics shared by training (the RM report), judging (agreement with human labels)
and evaluation: agreement and the length baseline, diversity and lengths, length-bias
diagnostics, confidence intervals. Imports nothing from the rest of rlaif_jax but itself."""
