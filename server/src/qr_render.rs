//! Drawing QR codes: SVG for pages (scales to any size, a few kilobytes) and PNG for anything
//! that wants a bitmap. Error correction level M (15 %), a four-module quiet zone.

use image::ImageEncoder;
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};

/// A QR code could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QrRenderError {
    /// The text does not fit in a QR code.
    #[error("text too long for a QR code")]
    TooLong,
    /// The image could not be encoded.
    #[error("the QR code could not be encoded")]
    Encoding,
}

fn code(text: &str) -> Result<QrCode, QrRenderError> {
    QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|_| QrRenderError::TooLong)
}

/// The code as a standalone SVG document, at least `min_size` pixels wide.
pub fn svg(text: &str, min_size: u32) -> Result<String, QrRenderError> {
    Ok(code(text)?
        .render()
        .min_dimensions(min_size, min_size)
        .quiet_zone(true)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build())
}

/// The code as a grayscale PNG, at least `min_size` pixels wide.
pub fn png(text: &str, min_size: u32) -> Result<Vec<u8>, QrRenderError> {
    let image = code(text)?
        .render::<image::Luma<u8>>()
        .min_dimensions(min_size, min_size)
        .quiet_zone(true)
        .build();
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::L8,
        )
        .map_err(|_| QrRenderError::Encoding)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_svg_and_png() {
        let text = "tessera://qr?server=https%3A%2F%2Fauth.example.com&token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let svg = svg(text, 256).unwrap();
        assert!(svg.starts_with("<?xml") || svg.starts_with("<svg"));
        assert!(svg.contains("</svg>"));
        let png = png(text, 256).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let decoded = image::load_from_memory(&png).unwrap();
        assert!(decoded.width() >= 256);
        assert!(super::svg(&"x".repeat(5000), 256).is_err());
    }
}
