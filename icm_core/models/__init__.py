"""The model of paper Fig. 1, one file per section: backbone (2.2), adapters (2.2, eq. 1),
prelim (2.3), entropy (the dual spatial entropy model), decoder (2.4), icm (the whole system)."""
