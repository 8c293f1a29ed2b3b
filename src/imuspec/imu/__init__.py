"""IMU recordings, their readers and model-specific preprocessing."""

from .readers import READERS, from_array, read_csv, read_imu
from .recording import IMUError, IMURecording, convert_accel, convert_gyro

__all__ = ["IMUError", "IMURecording", "READERS", "convert_accel", "convert_gyro", "from_array", "read_csv", "read_imu"]
