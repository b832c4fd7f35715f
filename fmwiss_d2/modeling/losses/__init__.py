"""Loss functions, one file per family."""
from .mask_losses import batch_dice_cost, batch_sigmoid_ce_cost, dice_loss, sigmoid_ce_loss

__all__ = ["dice_loss", "sigmoid_ce_loss", "batch_dice_cost", "batch_sigmoid_ce_cost"]
