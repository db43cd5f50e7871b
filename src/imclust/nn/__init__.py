"""Neural-network parts: architectures, losses, and the one training loop they all share."""
