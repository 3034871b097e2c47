"""Does a generated digit look like the digit it was asked for? (Moved to mmflow.metrics.probes.digits,
the digits probe; these names stay here for the digits task and its tests.)"""

from mmflow.metrics.probes.digits import HELD_OUT, SPLIT_SEED, DigitClassifier, digit_accuracy, digit_classifier

__all__ = ["DigitClassifier", "HELD_OUT", "SPLIT_SEED", "digit_accuracy", "digit_classifier"]
