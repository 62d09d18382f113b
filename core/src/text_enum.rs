//! `text_enum!`: an enum stored as TEXT and named the same in the API, declared once with its
//! names, so no list of its values is written anywhere else.

/// Declares an enum whose values are stored as TEXT and serialised by name, with `ALL` (the
/// one list of its values), `as_str`, `parse`, `names`, `Display`, serde, and sqlx
/// `Type`/`Encode`/`Decode` on both databases (typed like `str`).
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order: the one list of them.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The stored and serialised name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value named `s`, if any.
            pub fn parse(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }

            /// The names of `values`, comma-separated, for error messages.
            pub fn names(values: &[$name]) -> String {
                values.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::__private::serde::Serialize for $name {
            fn serialize<S: $crate::__private::serde::Serializer>(
                &self,
                s: S,
            ) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> $crate::__private::serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__private::serde::Deserializer<'de>>(
                d: D,
            ) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as $crate::__private::serde::Deserialize>::deserialize(d)?;
                Self::parse(&s).ok_or_else(|| {
                    <D::Error as $crate::__private::serde::de::Error>::custom(format!(
                        "{s:?} is not one of {}",
                        Self::names(Self::ALL)
                    ))
                })
            }
        }

        impl<DB: $crate::__private::sqlx::Database> $crate::__private::sqlx::Type<DB> for $name
        where
            str: $crate::__private::sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as $crate::__private::sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as $crate::__private::sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: $crate::__private::sqlx::Database> $crate::__private::sqlx::Encode<'q, DB>
            for $name
        where
            &'q str: $crate::__private::sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as $crate::__private::sqlx::Database>::ArgumentBuffer,
            ) -> Result<$crate::__private::sqlx::encode::IsNull, $crate::__private::sqlx::error::BoxDynError>
            {
                <&str as $crate::__private::sqlx::Encode<'q, DB>>::encode(self.as_str(), buf)
            }
        }

        impl<'r, DB: $crate::__private::sqlx::Database> $crate::__private::sqlx::Decode<'r, DB>
            for $name
        where
            &'r str: $crate::__private::sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as $crate::__private::sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, $crate::__private::sqlx::error::BoxDynError> {
                let s = <&str as $crate::__private::sqlx::Decode<'r, DB>>::decode(value)?;
                Self::parse(s).ok_or_else(|| {
                    format!("unknown {} {s:?}", stringify!($name)).into()
                })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    crate::text_enum! {
        /// A test enum.
        pub enum Colour {
            /// Red.
            Red => "red",
            /// Dark blue.
            DarkBlue => "dark-blue",
        }
    }

    #[test]
    fn names_round_trip_through_serde_and_parse() {
        assert_eq!(Colour::ALL, &[Colour::Red, Colour::DarkBlue]);
        for c in Colour::ALL {
            assert_eq!(Colour::parse(c.as_str()), Some(*c));
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{c}\""));
            assert_eq!(serde_json::from_str::<Colour>(&json).unwrap(), *c);
        }
        assert_eq!(Colour::parse("blue"), None);
        let e = serde_json::from_str::<Colour>("\"blue\"").unwrap_err();
        assert!(e.to_string().contains("red, dark-blue"), "{e}");
    }

    #[tokio::test]
    async fn stored_as_text_on_sqlite() {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (c TEXT NOT NULL)")
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES ($1)")
            .bind(Colour::DarkBlue)
            .execute(&mut c)
            .await
            .unwrap();
        let (raw,): (String,) = sqlx::query_as("SELECT c FROM t")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(raw, "dark-blue");
        let (typed,): (Colour,) = sqlx::query_as("SELECT c FROM t")
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(typed, Colour::DarkBlue);
        sqlx::query("UPDATE t SET c = 'green'")
            .execute(&mut c)
            .await
            .unwrap();
        let bad = sqlx::query_as::<_, (Colour,)>("SELECT c FROM t")
            .fetch_one(&mut c)
            .await;
        assert!(bad.is_err(), "an unknown name is a decode error");
    }
}
