"""Model code: side-adapted networks, item encoders, the user encoder and the loss."""
