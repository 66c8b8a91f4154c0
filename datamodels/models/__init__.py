"""Architectures: ``logreg`` (convex reference), ``mlp`` (stacked or nn.Module), ``resnet9``."""
