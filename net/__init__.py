"""nn.Modules only: backbones, CAM/IRN heads and their losses. No file I/O beyond loading a given state_dict."""
