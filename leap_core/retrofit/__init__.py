"""Retrofitting a published model: the exit branch trained beside its frozen layers, the AdaptiveLayerLoss peer, and the retrofit command that judges both against the original."""
