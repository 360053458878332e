"""cmamil's built-in models and aggregators, registered through entry points in setup.cfg."""
