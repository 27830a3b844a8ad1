"""Inference: device choice, model-space preprocessing, sliding windows, the gate decision, the engine."""
