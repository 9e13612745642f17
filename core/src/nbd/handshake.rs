//! The fixed newstyle handshake: greeting, client flags, option haggling.

use std::sync::Arc;

use super::buffer::{be_u16, be_u32, be_u64};
use super::consts::*;
use super::{
    CloseReason, Export, NbdConnection, OptionRefusal, Phase, ProtocolError, MAX_OPTIONS,
    MAX_OPTION_LEN, OUTPUT_HIGH_WATER,
};

/// Client flags this server understands; any other bit closes the connection.
const KNOWN_CLIENT_FLAGS: u32 = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;
/// Export names quoted in error messages are cut to this many bytes.
const NAME_IN_MESSAGES: usize = 256;

impl NbdConnection {
    pub(super) fn write_greeting(&mut self) {
        self.output.extend_from_slice(&NBDMAGIC.to_be_bytes());
        self.output.extend_from_slice(&IHAVEOPT.to_be_bytes());
        let flags = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;
        self.output.extend_from_slice(&flags.to_be_bytes());
    }

    /// Client flags: 32 bits. Clients without `NBD_FLAG_C_FIXED_NEWSTYLE` are served the same
    /// way (the spec allows it; such a client only ever sends `NBD_OPT_EXPORT_NAME`).
    pub(super) fn parse_client_flags(&mut self) -> bool {
        let at = self.input.position();
        let available = self.input.available();
        if available.len() < CLIENT_FLAGS_LEN {
            return false;
        }
        let flags = be_u32(available, 0);
        self.input.consume(CLIENT_FLAGS_LEN);
        let unknown = flags & !KNOWN_CLIENT_FLAGS;
        if unknown != 0 {
            let error = ProtocolError::UnknownClientFlags { at, flags, unknown };
            self.close(error.into());
            return false;
        }
        self.no_zeroes = flags & NBD_FLAG_C_NO_ZEROES != 0;
        self.phase = Phase::Options;
        true
    }

    /// One option: header, then (once it has all arrived) its data.
    pub(super) fn parse_option(&mut self) -> bool {
        if self.output.len() >= OUTPUT_HIGH_WATER {
            return false;
        }
        let at = self.input.position();
        let available = self.input.available();
        if available.len() < OPTION_HEADER_LEN {
            return false;
        }
        let (magic, option) = (be_u64(available, 0), be_u32(available, 8));
        let length = be_u32(available, 12);
        let fatal = if magic != IHAVEOPT {
            Some(ProtocolError::BadOptionMagic { at, found: magic })
        } else if length > MAX_OPTION_LEN {
            Some(ProtocolError::OptionTooLong {
                at,
                option,
                length,
                limit: MAX_OPTION_LEN,
            })
        } else if self.options_seen >= MAX_OPTIONS {
            Some(ProtocolError::TooManyOptions {
                at,
                option,
                limit: MAX_OPTIONS,
            })
        } else {
            None
        };
        if let Some(error) = fatal {
            self.close(error.into());
            return false;
        }
        let total = OPTION_HEADER_LEN + length as usize;
        let Some(data) = available.get(OPTION_HEADER_LEN..total) else {
            return false;
        };
        let data = data.to_vec();
        self.input.consume(total);
        self.options_seen += 1;
        self.handle_option(at, option, &data);
        true
    }

    fn handle_option(&mut self, at: u64, option: u32, data: &[u8]) {
        match option {
            NBD_OPT_EXPORT_NAME => self.option_export_name(at, data),
            NBD_OPT_ABORT => {
                // The spec asks servers to ignore any data sent with an abort.
                self.write_option_reply(option, NBD_REP_ACK, &[]);
                self.close(CloseReason::Aborted);
            }
            NBD_OPT_LIST if !data.is_empty() => self.refuse_option(OptionRefusal::Malformed {
                option,
                reason: "NBD_OPT_LIST carries no data",
            }),
            NBD_OPT_LIST => self.option_list(),
            NBD_OPT_INFO | NBD_OPT_GO => self.option_info_go(option, data),
            _ => self.refuse_option(OptionRefusal::Unsupported { option }),
        }
    }

    /// `NBD_OPT_EXPORT_NAME` cannot be refused with an error reply: an unknown name (or one
    /// that needs block-size negotiation) ends the session.
    fn option_export_name(&mut self, at: u64, name: &[u8]) {
        let Some(export) = self.catalogue.lookup(name).cloned() else {
            let name = name_for_messages(name);
            self.close(ProtocolError::UnknownExport { at, name }.into());
            return;
        };
        if export.require_block_size {
            let name = export.name;
            self.close(ProtocolError::BlockSizeRequired { at, name }.into());
            return;
        }
        self.output.extend_from_slice(&export.size.to_be_bytes());
        self.output
            .extend_from_slice(&export.transmission_flags().to_be_bytes());
        if !self.no_zeroes {
            self.output.extend_from_slice(&[0; EXPORT_NAME_ZEROES]);
        }
        self.enter_transmission(export);
    }

    /// One `NBD_REP_SERVER` per export (name, then the description as the free-form text the
    /// spec allows after it), then `NBD_REP_ACK`.
    fn option_list(&mut self) {
        let catalogue = Arc::clone(&self.catalogue);
        for export in catalogue.exports() {
            let name = export.name.as_bytes();
            let mut data = Vec::with_capacity(4 + name.len() + export.description.len());
            data.extend_from_slice(&(name.len() as u32).to_be_bytes());
            data.extend_from_slice(name);
            data.extend_from_slice(export.description.as_bytes());
            self.write_option_reply(NBD_OPT_LIST, NBD_REP_SERVER, &data);
        }
        self.write_option_reply(NBD_OPT_LIST, NBD_REP_ACK, &[]);
    }

    /// `NBD_OPT_INFO` and `NBD_OPT_GO`: `NBD_INFO_EXPORT` and `NBD_INFO_BLOCK_SIZE` always,
    /// `NBD_INFO_NAME` and `NBD_INFO_DESCRIPTION` when asked; then `NBD_REP_ACK`, and for GO
    /// the transmission phase.
    fn option_info_go(&mut self, option: u32, data: &[u8]) {
        let (name, requests) = match parse_info_request(data) {
            Ok(parsed) => parsed,
            Err(reason) => return self.refuse_option(OptionRefusal::Malformed { option, reason }),
        };
        let catalogue = Arc::clone(&self.catalogue);
        let Some(export) = catalogue.lookup(name) else {
            let name = name_for_messages(name);
            return self.refuse_option(OptionRefusal::UnknownExport { option, name });
        };
        let asked = |info: u16| requests.contains(&info);
        if option == NBD_OPT_GO && export.require_block_size && !asked(NBD_INFO_BLOCK_SIZE) {
            // The spec asks for the constraints first, to save the client a round trip.
            self.write_info_block_size(option, export);
            let name = export.name.clone();
            return self.refuse_option(OptionRefusal::BlockSizeRequired { option, name });
        }
        let mut info = NBD_INFO_EXPORT.to_be_bytes().to_vec();
        info.extend_from_slice(&export.size.to_be_bytes());
        info.extend_from_slice(&export.transmission_flags().to_be_bytes());
        self.write_option_reply(option, NBD_REP_INFO, &info);
        if asked(NBD_INFO_NAME) {
            self.write_info_string(option, NBD_INFO_NAME, &export.name);
        }
        if asked(NBD_INFO_DESCRIPTION) {
            self.write_info_string(option, NBD_INFO_DESCRIPTION, &export.description);
        }
        self.write_info_block_size(option, export);
        self.write_option_reply(option, NBD_REP_ACK, &[]);
        if option == NBD_OPT_GO {
            self.enter_transmission(export.clone());
        }
    }

    fn write_info_string(&mut self, option: u32, info: u16, text: &str) {
        let mut data = info.to_be_bytes().to_vec();
        data.extend_from_slice(text.as_bytes());
        self.write_option_reply(option, NBD_REP_INFO, &data);
    }

    fn write_info_block_size(&mut self, option: u32, export: &Export) {
        let sizes = export.block_sizes;
        let mut data = NBD_INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for value in [sizes.minimum, sizes.preferred, sizes.maximum] {
            data.extend_from_slice(&value.to_be_bytes());
        }
        self.write_option_reply(option, NBD_REP_INFO, &data);
    }

    /// Answers with the refusal's `NBD_REP_ERR_*` and its message as the reply text.
    fn refuse_option(&mut self, refusal: OptionRefusal) {
        let message = refusal.to_string();
        let text = truncate_utf8(&message, MAX_STRING_LEN);
        self.write_option_reply(refusal.option(), refusal.reply_type(), text.as_bytes());
        self.reject(refusal.into());
    }

    fn write_option_reply(&mut self, option: u32, reply_type: u32, data: &[u8]) {
        self.output.extend_from_slice(&NBD_REP_MAGIC.to_be_bytes());
        self.output.extend_from_slice(&option.to_be_bytes());
        self.output.extend_from_slice(&reply_type.to_be_bytes());
        // Every reply this module builds is far below 4 GiB (names and texts are bounded).
        self.output
            .extend_from_slice(&(data.len() as u32).to_be_bytes());
        self.output.extend_from_slice(data);
    }

    fn enter_transmission(&mut self, export: Export) {
        self.export = Some(export);
        self.phase = Phase::Transmission;
    }
}

/// `NBD_OPT_INFO`/`NBD_OPT_GO` data: name length (32), name, request count (16), requests.
fn parse_info_request(data: &[u8]) -> Result<(&[u8], Vec<u16>), &'static str> {
    if data.len() < 6 {
        return Err("option data is shorter than 6 bytes");
    }
    let name_length = be_u32(data, 0) as usize;
    if name_length > data.len() - 6 {
        return Err("export name length exceeds the option data length - 6");
    }
    if name_length > MAX_STRING_LEN {
        return Err("export name is longer than 4096 bytes");
    }
    let name = &data[4..4 + name_length];
    let count = be_u16(data, 4 + name_length) as usize;
    let list = &data[6 + name_length..];
    if list.len() != 2 * count {
        return Err("information request count does not match the option length");
    }
    let requests = list.chunks_exact(2).map(|pair| be_u16(pair, 0)).collect();
    Ok((name, requests))
}

/// A client-supplied name, shortened and made printable for an error message.
fn name_for_messages(name: &[u8]) -> String {
    let cut = &name[..name.len().min(NAME_IN_MESSAGES)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if cut.len() < name.len() {
        text.push_str("...");
    }
    text
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
