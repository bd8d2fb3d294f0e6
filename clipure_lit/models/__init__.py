"""The purified zero-shot classifier (an ``nn.Module``) and the LightningModule around it."""
