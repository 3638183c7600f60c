"""Control plane: model lifecycle, demo repository, later registration and autoscaling."""
