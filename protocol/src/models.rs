//! Marketing names of iPhone models ("iPhone 11 Pro") by ProductType ("iPhone12,3"): what
//! the station shows the operator and what the simulator's phones report to MDM inventories.

/// `(ProductType, marketing name)`; several ProductTypes can share one name (regional variants).
pub const MARKETING_NAMES: &[(&str, &str)] = &[
    ("iPhone8,1", "iPhone 6s"),
    ("iPhone9,1", "iPhone 7"),
    ("iPhone9,3", "iPhone 7"),
    ("iPhone10,1", "iPhone 8"),
    ("iPhone10,4", "iPhone 8"),
    ("iPhone10,2", "iPhone 8 Plus"),
    ("iPhone10,5", "iPhone 8 Plus"),
    ("iPhone10,3", "iPhone X"),
    ("iPhone10,6", "iPhone X"),
    ("iPhone11,2", "iPhone XS"),
    ("iPhone11,4", "iPhone XS Max"),
    ("iPhone11,6", "iPhone XS Max"),
    ("iPhone11,8", "iPhone XR"),
    ("iPhone12,1", "iPhone 11"),
    ("iPhone12,3", "iPhone 11 Pro"),
    ("iPhone12,5", "iPhone 11 Pro Max"),
    ("iPhone12,8", "iPhone SE (2nd generation)"),
    ("iPhone13,1", "iPhone 12 mini"),
    ("iPhone13,2", "iPhone 12"),
    ("iPhone13,3", "iPhone 12 Pro"),
    ("iPhone13,4", "iPhone 12 Pro Max"),
    ("iPhone14,2", "iPhone 13 Pro"),
    ("iPhone14,3", "iPhone 13 Pro Max"),
    ("iPhone14,4", "iPhone 13 mini"),
    ("iPhone14,5", "iPhone 13"),
    ("iPhone14,6", "iPhone SE (3rd generation)"),
    ("iPhone14,7", "iPhone 14"),
    ("iPhone14,8", "iPhone 14 Plus"),
    ("iPhone15,2", "iPhone 14 Pro"),
    ("iPhone15,3", "iPhone 14 Pro Max"),
    ("iPhone15,4", "iPhone 15"),
    ("iPhone15,5", "iPhone 15 Plus"),
    ("iPhone16,1", "iPhone 15 Pro"),
    ("iPhone16,2", "iPhone 15 Pro Max"),
    ("iPhone17,1", "iPhone 16 Pro"),
    ("iPhone17,2", "iPhone 16 Pro Max"),
    ("iPhone17,3", "iPhone 16"),
    ("iPhone17,4", "iPhone 16 Plus"),
    ("iPhone17,5", "iPhone 16e"),
];

/// The marketing name of `product_type`, if it is a model this table knows.
pub fn marketing_name(product_type: &str) -> Option<&'static str> {
    MARKETING_NAMES
        .iter()
        .find(|(id, _)| *id == product_type)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_models() {
        assert_eq!(marketing_name("iPhone12,1"), Some("iPhone 11"));
        assert_eq!(marketing_name("iPhone12,3"), Some("iPhone 11 Pro"));
        assert_eq!(marketing_name("iPhone9,3"), Some("iPhone 7"));
        assert_eq!(marketing_name("iPhone99,9"), None);
    }

    #[test]
    fn each_product_type_is_listed_once() {
        for (i, (id, _)) in MARKETING_NAMES.iter().enumerate() {
            assert!(
                MARKETING_NAMES[i + 1..]
                    .iter()
                    .all(|(other, _)| other != id),
                "{id} listed twice"
            );
        }
    }
}
