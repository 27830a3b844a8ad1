"""Evaluation: the one scoring rule (`scoring`), validation through the engine, dataset reports."""
