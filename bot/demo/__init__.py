"""``callbot demo``: the whole thing on one machine, with nothing to set up."""
