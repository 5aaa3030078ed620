"""NoCloud seeds for Talos nodes."""
