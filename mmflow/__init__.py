"""mmflow: multimodal generation with flow matching.

Time convention used everywhere: t = 0 is noise (x_0 ~ N(0, I)), t = 1 is data.
"""

__version__ = "0.1.0"
