"""The doors: translate wire formats to domain calls and domain errors back."""
