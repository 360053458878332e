"""An example third-party cmamil plugin package: small CNN patch models and pooling aggregators."""
