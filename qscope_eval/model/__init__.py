"""The model side: backbone forward, SAE file format and registry, encoders, pooling, feature statistics, SAE training, toy models."""
