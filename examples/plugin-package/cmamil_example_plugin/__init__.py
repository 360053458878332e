"""An example third-party cmamil plugin package: a small CNN patch model and a max-pooling aggregator."""
