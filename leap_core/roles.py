"""The names inside a retrain's result, shared by the retrain loops and their reports."""

CANDIDATE, CHAMPION, ORIGINAL = "candidate", "champion", "original"  # the models a retrain compares
SLICE = "traffic-slice"  # the held-out slice of logged traffic, as a measurement set's name
