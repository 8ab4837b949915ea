"""The two streams of readings, meters and vehicles: their names, payload fields and
tables. The one source the parser, the writer, the metrics, ``status`` and the
partition maintenance take them from."""

from __future__ import annotations

import dataclasses
from typing import Final, Literal

__all__ = ["HISTORY_TABLES", "METER", "STREAMS", "STREAM_NAMES", "VEHICLE", "StreamSpec"]


@dataclasses.dataclass(frozen=True, slots=True)
class StreamSpec:
    """What one stream's payloads and tables look like."""

    name: Literal["meter", "vehicle"]
    id_field: str
    energy_field: str
    optional_fields: tuple[str, ...]

    @property
    def value_fields(self) -> tuple[str, ...]:
        """The numeric columns in table order (energy first, then the optional ones)."""
        return (self.energy_field, *self.optional_fields)

    @property
    def history_table(self) -> str:
        return f"{self.name}_telemetry_history"

    @property
    def current_table(self) -> str:
        return f"{self.name}_current_state"


METER: Final = StreamSpec("meter", "meter_id", "kwh_consumed_ac", ("power_kw", "voltage_v", "current_a"))
VEHICLE: Final = StreamSpec("vehicle", "vehicle_id", "kwh_delivered_dc", ("power_kw", "soc_pct", "battery_temp_c"))
# In the fixed order every writer takes its locks in (meter, then vehicle).
STREAMS: Final[dict[str, StreamSpec]] = {METER.name: METER, VEHICLE.name: VEHICLE}
STREAM_NAMES: Final = tuple(STREAMS)
HISTORY_TABLES: Final = tuple(spec.history_table for spec in STREAMS.values())
