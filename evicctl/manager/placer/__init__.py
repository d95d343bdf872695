"""The placer, a pure function from contexts, profiles, tiers and pins to a plan: pricing (the one option-pricing function), options, types, hull, place (greedy), exact (MILP bound)."""
