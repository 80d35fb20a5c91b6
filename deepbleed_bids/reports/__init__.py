"""HTML reports and figures: per participant (fMRIPrep-like) and for the group."""
