"""PACS integration: DICOMweb STOW-RS and DIMSE C-STORE in, DICOM results (SEG, SR, GSPS)
out, through a durable job store and outbox."""
