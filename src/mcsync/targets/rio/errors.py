"""What each RIO answer means for the item: the code → policy table.

RIO rejects a message in two ways (rio.md §2-3):

- `requestGoedgekeurd=false` with zero or more `foutmelding`s (business rules). The codes below
  are the ones the SURF mapper learned cannot be fixed by sending the same content again: they
  park the microcredential with DUO's code and text, for a person. Every other code, and a
  rejection without any foutmelding (it happens, mapper #207), is treated as temporary and
  retried on later runs; `max_attempts` writes later it is parked all the same, so nothing loops
  forever.
- a SOAP Fault (DK/EK codes: authorisation, schema, WS-Addressing, signature, service down) and
  transport errors: the message was not processed, so it is safe to send again; retried with
  back-off within the run. A fault that persists is about all of mcsync's messages (the same
  certificate, signer, OIN and envelope go into every one, and DUO's service is one), so the
  target stops for this run and everything stays queued (TargetUnavailable, exit 75); only
  DK0004 (this message does not fit DUO's schema) stays with the one microcredential, which is
  retried and parked after `max_attempts`.

In a lookup (`opvragen_rioIdentificatiecode`), A01161 is no error: the key is not (yet) in RIO.
"""

from __future__ import annotations

from ...errors import DeliveryError, PermanentError, RetriableError
from .responses import RioResponse, SoapFault

#: A lookup found nothing: "De externe identificatie komt niet voor in RIO".
NOT_FOUND = "A01161"
#: Deleting an offering that RIO does not hold: "De aangeboden opleiding komt niet voor in RIO".
OFFERING_UNKNOWN = "A01020"
#: The own key is already used by another unit: also what a second create of ours gets.
KEY_IN_USE = "P01081"

#: Permanent codes: park with DUO's text and this hint for the operator.
PERMANENT: dict[str, str] = {
    "AUT401": "DUO has not authorised this OIN for this operation; ask DUO (or SURF, when it signs for "
              "you) to authorise the sender OIN in [institution] oin",
    "A01060": "the onderwijslocatiecode is not known in RIO; fix rio.onderwijslocatiecode in the mapping file",
    "A01160": "the own key (eigenAangebodenOpleidingSleutel) is not unique in RIO; give the microcredential "
              "its own rio.offering_code in the mapping file",
    "K01010": "a kenmerk RIO requires is missing; check the rio section of the mapping file",
    KEY_IN_USE: "another unit in RIO already uses this eigenOpleidingseenheidSleutel; give the "
                "microcredential its own rio.eigen_sleutel, or link it to that unit",
    "P01430": "the periods do not fit RIO's rules (dates outside the unit's period); check start_date and "
              "end_date in the mapping file",
    "N11020": "RIO rejected the dates (end of a period before its start); check start_date and end_date",
    "N11030": "RIO rejected the dates of the offering; check start_date and end_date in the mapping file",
}


def rejection(response: RioResponse, *, what: str) -> DeliveryError:
    """The error for a `requestGoedgekeurd=false` answer to a write about `what`."""
    return _classify(response, f"RIO rejected {what}", "temporary as far as mcsync knows; sent again on a later run")


def lookup_failure(response: RioResponse, *, what: str) -> DeliveryError:
    """The error for a lookup that failed with something other than A01161."""
    return _classify(response, f"RIO could not look up {what}", "looked up again on a later run")


def _classify(response: RioResponse, text: str, retry_hint: str) -> DeliveryError:
    message = f"{text}: {response.describe_rejection()}"
    for melding in response.foutmeldingen:
        if melding.code in PERMANENT:
            return PermanentError(message, code=melding.code, hint=PERMANENT[melding.code])
    code = response.foutmeldingen[0].code if response.foutmeldingen else None
    return RetriableError(message, code=code, hint=retry_hint)


#: Faults about the content of one message; every other fault concerns all messages.
MESSAGE_FAULTS = frozenset({"DK0004"})


class RioFault(RetriableError):
    """DUO answered with a SOAP fault: the message was not processed."""

    @property
    def target_wide(self) -> bool:
        return self.code not in MESSAGE_FAULTS


def fault(error: SoapFault, *, what: str) -> RioFault:
    """A SOAP fault: not processed, safe to send again."""
    return RioFault(f"RIO answered {what} with {error}", code=error.code or error.faultcode or None,
                    hint="the message was not processed; it is sent again")
