"""The export's user-facing errors (`modeling_mobileclip.cli` reports them as one line)."""


class ExportInputError(ValueError):
    """An export request that cannot be honoured (bad option, missing processor or calibration data)."""


class CalibrationError(ExportInputError):
    """Calibration data that cannot be read or holds no usable image."""
